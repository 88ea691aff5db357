from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.predict_stage1(
    snakemake.input.npz,
    snakemake.input.models,
    p.data_dir,
    snakemake.wildcards.case,
    p.cfg,
    snakemake.output.mask,
    snakemake.output.info,
    threads=snakemake.threads,
)
