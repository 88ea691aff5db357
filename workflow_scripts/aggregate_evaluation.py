from kitscascade import metrics, runlog

runlog.start(snakemake.log[0])
i, o = snakemake.input, snakemake.output
comparison = metrics.aggregate_evaluation(i.cases, i.stage1, o.per_case, o.summary, o.stage1_per_case, o.comparison)
print(comparison.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
