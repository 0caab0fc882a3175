"""The example app: `corral run examples.app:app support --input '{"message": "Where is A-1001?"}'`."""

from corral import App

from .research import research
from .sim_responder import example_model
from .support import support, support_bot

app = App(agents=[support, support_bot, research], models={"default": example_model()})
