"""Click logs in: file readers, the published data sets, the encoded click log and the batches training reads."""
