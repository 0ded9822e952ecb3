"""The API's routes. Job ids in paths use the `job_id` convertor registered here, before any
route is declared."""

from starlette.convertors import Convertor, register_url_convertor

from workflows.models import JOB_ID


class JobIdConvertor(Convertor[str]):
    """Job ids never shadow the fixed paths, so `GET /v1/download/initiate` is 405, not 404."""

    regex = rf"(?!(?:initiate|check|start)(?:/|$)){JOB_ID}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", JobIdConvertor())
