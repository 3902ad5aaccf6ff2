"""Model card and Hub publishing for exported VictorianGPT folders."""
