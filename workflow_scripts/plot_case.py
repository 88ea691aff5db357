from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
steps.plot_case(
    snakemake.params.data_dir,
    snakemake.wildcards.case,
    snakemake.input.prediction,
    snakemake.output[0],
)
