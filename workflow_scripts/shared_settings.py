from kitscascade import io, runlog

runlog.start(snakemake.log[0])
io.save_yaml(snakemake.params.settings, snakemake.output[0])
