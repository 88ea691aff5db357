from kitscascade import runlog, stage2

runlog.start(snakemake.log[0])
stage2.train_fold(
    list(snakemake.input),
    snakemake.params.cfg,
    int(snakemake.wildcards.fold),
    snakemake.output.model,
    snakemake.output.curve,
    threads=snakemake.threads,
)
