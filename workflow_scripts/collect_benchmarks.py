from kitscascade import report, runlog

runlog.start(snakemake.log[0])
p = snakemake.params
report.collect_benchmarks(p.folders, p.benchmarks_root, snakemake.output[0], p.cases, p.folds, p.exclude)
