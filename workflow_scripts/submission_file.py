from kitscascade import io, runlog

runlog.start(snakemake.log[0])
io.copy_file(snakemake.input[0], snakemake.output[0])
