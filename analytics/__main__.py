"""`python -m analytics` runs `sluice analytics` (the sink and the reporting API)."""

from analytics.main import run

if __name__ == "__main__":
    run()
