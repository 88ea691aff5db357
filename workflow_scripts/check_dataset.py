from kitscascade import check, runlog

runlog.start(snakemake.log[0])
check.check_dataset(snakemake.params.cases, snakemake.params.labels, snakemake.output[0])
