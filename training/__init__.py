"""Training VictorianGPT: PG19 data pipeline and the accelerate loop."""
