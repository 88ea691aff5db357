from kitscascade import metrics, runlog

runlog.start(snakemake.log[0])
summary = metrics.aggregate_evaluation(list(snakemake.input), snakemake.output.per_case, snakemake.output.summary)
print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
