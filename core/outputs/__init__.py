"""What a run hands over: the model bundle rmm-predict reads, its model card, and the layout of metrics.json.

Modules: bundle, model_card, metrics_document."""
