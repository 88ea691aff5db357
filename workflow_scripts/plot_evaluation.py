from kitscascade import plots, runlog

runlog.start(snakemake.log[0])
plots.plot_evaluation(snakemake.input[0], snakemake.output[0])
