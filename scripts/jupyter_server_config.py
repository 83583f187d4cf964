"""Jupyter server configuration: clean a notebook of this project as JupyterLab saves it.

JupyterLab writes its own metadata into a notebook (the kernel's `language_info`, a `kernelspec` display name, cell
`execution` timings, `collapsed`/`scrolled` flags); `nbdev-clean` strips them. With this hook every save goes through
the same cleaning as `nbdev-clean` (enabled by `jupyter_hooks = true` in pyproject.toml's [tool.nbdev]), so
opening, running and saving a notebook leaves it as `git` has it unless its source or outputs changed.
`scripts/setup.sh` copies this file to `.venv/etc/jupyter/jupyter_server_config.py`, where `.venv/bin/jupyter lab`
reads it. Notebooks outside an nbdev project are saved untouched.
"""
import os


def clean_notebook_before_save(model, path, contents_manager=None, **kwargs):
    "Jupyter's `pre_save_hook`: clean `model` (a notebook being saved to `path`, relative to the server's root) with nbdev."
    if model.get("type") != "notebook": return
    try:
        from nbdev.clean import clean_nb
        from nbdev.config import get_config, is_nbdev
    except ModuleNotFoundError: return
    root = getattr(contents_manager, "root_dir", None) or os.getcwd()
    folder = os.path.dirname(os.path.join(root, path.lstrip("/")))     # nbdev finds pyproject.toml from the notebook's folder
    if not is_nbdev(folder): return
    config = get_config(path=folder)
    if not config.jupyter_hooks: return
    # what `nbdev-clean` does to a file (nbdev's own `clean_jupyter` would also sign the notebook and write nbs/.last_checked)
    clean_nb(model["content"], config.clear_all, config.get("allowed_metadata_keys") or [],
             config.get("allowed_cell_metadata_keys") or [], config.clean_ids, config.get("allowed_out_metadata_keys") or [])

if "c" in globals():     # loaded by Jupyter as a configuration file
    import warnings       # (the server applies its configuration twice; the second time it warns that this hook replaces itself)
    warnings.filterwarnings("ignore", message=r"Overriding existing pre_save_hook \(clean_notebook_before_save\) with a new one \(clean_notebook_before_save\)")
    c.ContentsManager.pre_save_hook = clean_notebook_before_save   # noqa: F821
