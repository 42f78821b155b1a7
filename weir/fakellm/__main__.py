"""`python -m weir.fakellm [flags]`: the simulated LLM provider (same as `weir fake-llm`)."""

from weir.fakellm.server import main

if __name__ == "__main__":
    main()
