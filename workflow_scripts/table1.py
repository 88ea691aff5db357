from kitscascade import report, runlog

runlog.start(snakemake.log[0])
table = report.write_table1(snakemake.params.rows, snakemake.output.csv, snakemake.output.md)
print(table.to_string(index=False))
