from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
w = snakemake.wildcards
steps.plot_training_curve(snakemake.input[0], f"stage {w.stage}, fold {w.fold}", snakemake.output[0])
