from kitscascade import plots, runlog

runlog.start(snakemake.log[0])
w = snakemake.wildcards
plots.plot_training_curve_from_csv(snakemake.input[0], f"stage {w.stage}, fold {w.fold}", snakemake.output[0])
