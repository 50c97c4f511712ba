"""What a run leaves for people to read: its metrics logs, model cards, the pipeline summary and the HTML report.

- runlog.py: the run directory's records (resolved config, metrics JSONL and the trackers), progress bars (layer 2);
- trackers.py: TensorBoard, trackio and Weights & Biases behind one interface, fed by runlog.MetricsLog (layer 2);
- modelcard.py: README.md model cards with lineage and cost (layer 2);
- summary.py: the pipeline's closing table (layer 4); report.py: the self-contained HTML run report (layer 4).
"""
