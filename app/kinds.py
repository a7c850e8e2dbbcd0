"""The reference app's job kinds, all in one place so the kind -> queue map reads at a glance.

`STACK_KINDS=app.kinds:registry` points the API and the workers at it. Image and content
generation share the `content` queue so a dedicated worker pool can take the slow work; the
audit log has its own `logs` queue so it is never stuck behind a long render.
"""

from __future__ import annotations

from app.audit import write_log
from app.content import generate_content
from app.demo import demo
from app.images import analyze_image, generate_image
from app.params import AnalyzeParams, ContentParams, DemoParams, ImageParams, LogParams
from stack.jobs.registry import JobRegistry

registry = JobRegistry()

registry.kind("generate_image", params=ImageParams, queue="content")(generate_image)
registry.kind("analyze_image", params=AnalyzeParams, queue="default")(analyze_image)
registry.kind("generate_content", params=ContentParams, queue="content")(generate_content)
registry.kind("write_log", params=LogParams, queue="logs")(write_log)
registry.kind("demo", params=DemoParams, queue="default")(demo)
