from kitscascade import model, runlog

runlog.start(snakemake.log[0])
i = snakemake.input
model.export_model(i.stage1, i.stage2, i.statistics, i.provenance, snakemake.params.config, snakemake.output[0])
