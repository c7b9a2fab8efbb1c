"""What sites send instead of rows: feature sums and the federated PCA, fixed-grid and merged histograms, and the federated percentile read from them.

Modules: feature_stats, feature_reduction, histogram, merged_histogram."""
