"""kubequant's optimization engine: load, quantize, save, reload, measure, report."""
