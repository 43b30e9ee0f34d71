# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Dreambooth from a notebook
#
# A notebook in the py:percent format: open it in Jupyter with jupytext, or run it as a plain
# script (`python examples/notebook.py`). It uses the blocking client,
# `dreambooth_async.sync.DreamboothClient`: no `await`, and it works inside a running Jupyter
# kernel, whose event loop it leaves alone (the client runs its own loop in a thread).
#
# Set `DREAMBOOTH_API_KEY`, and `DREAMBOOTH_BASE_URL` to try it on the local emulator:
#
#     python -m dreambooth_async.emulator --port 7860 --time-scale 0.05
#     export DREAMBOOTH_API_KEY=emulator-key DREAMBOOTH_BASE_URL=http://127.0.0.1:7860

# %%
import os
import tempfile
from pathlib import Path

import dreambooth_async as dba
from dreambooth_async.sync import DreamboothClient

try:
    from IPython.display import display
except ImportError:  # run as a plain script: show the text form instead
    display = print

BASE_URL = os.environ.get("DREAMBOOTH_BASE_URL", dba.DEFAULT_BASE_URL)
OUT = Path(os.environ.get("NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="dreambooth-"))

# The key is read from DREAMBOOTH_API_KEY; never paste it into a notebook that gets shared.
client = DreamboothClient(base_url=BASE_URL)
print(client)  # the repr never shows the key

# %% [markdown]
# ## One image
#
# `text2img` submits, waits through "processing" and returns the result. In Jupyter the
# result shows its images inline, with the seed and the settings that ran.

# %%
result = client.text2img(model_id="midjourney", prompt="a watercolor fox in the snow", seed=7)
display(result)

# %% [markdown]
# ## Submit now, collect later
#
# `submit` returns as soon as the service accepted the job; `wait()` blocks for its result.

# %%
job = client.submit(dba.Text2Img(model_id="midjourney", prompt="a paper crane", seed=11))
print(job.id, job.status, job.eta)
crane = job.wait(timeout=300)
display(crane)

# %% [markdown]
# ## Many prompts, with a progress bar
#
# `map` yields each item as it completes, under the account's queue-slot limit;
# `progress=True` shows a bar (a widget in Jupyter).

# %%
prompts = ["a red bicycle", "a blue teapot", "a green lantern", "a yellow kite"]
requests = [dba.Text2Img(model_id="midjourney", prompt=p, seed=i) for i, p in enumerate(prompts)]
results = {}
for item in client.map(requests, progress=True):
    if item.ok:
        results[item.index] = item.result
    else:
        print(f"{prompts[item.index]!r} failed: {item.error}")
print(f"{len(results)} of {len(prompts)} done")

# %% [markdown]
# ## Save the images
#
# Output URLs expire after a day: download what you want to keep.

# %%
paths = client.download(result, OUT / "fox")
for index in sorted(results):
    paths += client.download(results[index], OUT / "batch")
print(len(paths), "files in", OUT)

# %%
client.close()
