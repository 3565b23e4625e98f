"""Visual QA: capture two viewports with their logs, describe, judge against a spec.

`check_page()` is the entry the agent loop calls; `agent-node check-ui` is the command.
"""

from agent_node.qa.capture import Capturer
from agent_node.qa.check import check_page
from agent_node.qa.page_server import PageServer
from agent_node.qa.result import Failure, QAResult, VisualVerdict
from agent_node.qa.spec import Spec, load_spec, parse_spec

__all__ = ["Capturer", "Failure", "PageServer", "QAResult", "Spec", "VisualVerdict", "check_page",
           "load_spec", "parse_spec"]
