"""`make report`: the results of a matrix as report.md, plots and metrics.csv.

Reads only result files (matrix.json and each run's metrics.json); never reruns or imports
training code. One module per part of the report, imported in this order (no cycles):

- `data`: loading and validating matrix.json and metrics.json into `RunResult` records;
- `stats`: mean +- std, Student's t intervals, Welch differences;
- `markdown`: number and table formatting;
- `cells`: which runs make up a (method, sparsity) cell; candidate and baseline;
- `tracking`: the section linking each run to its live tracker (tracking.json);
- `sections`: the sections of report.md, in the order they appear, and `render_report`;
- `plots`: the PNG plots (matplotlib, imported only when drawing);
- `output`: writing report.md, plots/ and metrics.csv (`write_report`);
- `compare`: two matrices side by side (`make report COMPARE="A B"`);
- `cli`: the command line (`python -m scripts.report`, i.e. `make report`).

The statistics rules are documented in docs/report.md.
"""
