"""The built-in demo: a small model trained with injected canaries (`build`), and `scrubber demo` (`run`)."""
