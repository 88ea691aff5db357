from kitscascade import model, predict, runlog

runlog.start(snakemake.log[0])
predict.predict_case(
    model.read_model(snakemake.input.model),
    snakemake.input.imaging,
    snakemake.output[0],
    snakemake.params.execution,
    threads=snakemake.threads,
)
