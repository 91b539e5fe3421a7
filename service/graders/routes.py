"""Graders: OpenAI's `/v1/fine_tuning/alpha/graders/{validate,run}` (what the `openai` SDK's
`client.fine_tuning.alpha.graders` calls) and the same at `/graders/…` on the native API.
Handlers only call the service."""

from __future__ import annotations

from litestar import Controller, post
from litestar.datastructures import State

from service.contracts import graders as w
from service.graders.service import GraderService
from service.http_errors import AUTHED, errors

REQUEST_TYPES = (w.ValidateGraderRequest, w.RunGraderRequest)


def provide_graders(state: State) -> GraderService:
    return state.graders


class _Graders(Controller):
    @post("/validate", status_code=200, responses=errors(*AUTHED, 422))
    async def validate(self, data: w.ValidateGraderRequest, tenant: str,
                       graders: GraderService) -> w.ValidateGraderResponse:
        """Check a grader before use: every template variable, the formula of a multi grader, the
        metric, a python grader's source (parsed, never run here) and a score_model's judge (a
        model this key may use). A 422 names the field at fault."""
        return w.ValidateGraderResponse(grader=await graders.validate(tenant, data.grader))

    @post("/run", status_code=200, responses=errors(*AUTHED, 422))
    async def run(self, data: w.RunGraderRequest, tenant: str, graders: GraderService) -> w.RunGraderResponse:
        """Grade one model sample against one dataset item (`{{sample.output_text}}`,
        `{{item.…}}`). A grader that fails (a missing variable, a python error or limit, a judge
        that does not answer a number) scores 0 and `metadata.errors` says which."""
        return await graders.run(tenant, data)


class GradersController(_Graders):
    path = "/graders"
    tags = ["graders"]


class V1GradersController(_Graders):
    path = "/v1/fine_tuning/alpha/graders"
    tags = ["openai: graders"]
