from kitscascade import runlog, splits

runlog.start(snakemake.log[0])
splits.save_splits(snakemake.params.splits, snakemake.output[0])
