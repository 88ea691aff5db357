from kitscascade import model, runlog

runlog.start(snakemake.log[0])
model.open_model(snakemake.input[0], snakemake.output[0])
