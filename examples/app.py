"""The example app: `corral run examples.app:app support --input '{"message": "Where is A-1001?"}'`.

It sets no model: the `default` route is the embedded SmolLM2 model when it is installed, else the
simulator, or whatever `--config` / `CORRAL_CONFIG` names; the command says which at start-up.
`examples.app:scripted` is the same app on a scripted stand-in model, for demos and tests that
need predictable answers.
"""

from corral import App

from .research import research
from .sim_responder import example_model
from .support import support, support_bot

app = App(agents=[support, support_bot, research])
scripted = App(agents=[support, support_bot, research], models={"default": example_model()})
