from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
steps.plot_evaluation(snakemake.input[0], snakemake.output[0])
