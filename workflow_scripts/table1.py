from kitscascade import report, runlog

runlog.start(snakemake.log[0])
p = snakemake.params
table = report.write_table1(p.rows, p.base_experiment, snakemake.output.csv, snakemake.output.md)
print(table.to_string(index=False))
