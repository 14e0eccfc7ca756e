"""Storage: small interfaces, domain records, and the backends behind them."""
