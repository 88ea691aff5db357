from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
steps.collect_benchmarks(list(snakemake.input), snakemake.params.benchmarks_root, snakemake.output[0])
