from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
steps.copy_prediction(snakemake.input[0], snakemake.output[0])
