"""Stock use case: next-week realised volatility or next-day return from daily OHLCV bars (one model across
tickers), on the S&P 500 daily table shipped inside `arch` by default."""
