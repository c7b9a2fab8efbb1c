"""A hospital's site folder as the model reads it: the on-disk contract, its validation, bags of instance features and padded tensors.

Modules: bag_file, schema, site_data, tensors."""
