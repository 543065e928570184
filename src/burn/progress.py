"""The progress bar every long stage uses: tqdm's notebook bar inside Jupyter, its text bar
elsewhere. Without ipywidgets, tqdm falls back to the text bar with a warning that names this
machine's site-packages path; the warning is silenced so that executed notebooks do not carry
it."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
