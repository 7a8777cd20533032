"""Card-fraud use case after the Fraud Detection Handbook (Le Borgne et al.): simulator, features, metrics."""
