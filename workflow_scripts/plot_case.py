from kitscascade import plots, runlog

runlog.start(snakemake.log[0])
plots.plot_case(
    snakemake.input.imaging,
    snakemake.input.segmentation,
    snakemake.wildcards.case,
    snakemake.input.prediction,
    snakemake.output[0],
)
