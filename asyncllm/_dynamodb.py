"""A result store in a DynamoDB table, for fleets of machines.

The table has the request id as its partition key (``request_id``, a string)
and DynamoDB's TTL on the ``ttl`` attribute, which deletes an item a day after
it expires (the day keeps "expired" apart from "not found"). Responses are
stored zlib-compressed; an item is limited to 400 KB by DynamoDB, so a
response that does not fit even compressed cannot be stored and stays on the
response queue until its redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from ._config import Settings
from ._errors import TransportError
from ._results import DEFAULT_TTL_SECONDS, ResultStore, Status, _Row

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoDBResultStore", "create_results_table"]

#: Seconds an expired item is kept so it reads "expired" rather than unknown.
_TOMBSTONE_SECONDS = 24 * 3600


def _client(settings: Settings) -> DynamoDBClient:
    import boto3

    credentials = settings.credentials()
    session = boto3.Session(
        region_name=settings.region,
        aws_access_key_id=credentials[0] if credentials else None,
        aws_secret_access_key=credentials[1] if credentials else None,
    )
    return session.client("dynamodb", endpoint_url=settings.endpoint_url)


def create_results_table(settings: Settings, table: str) -> bool:
    """Create the results table with its TTL, if it does not exist yet.

    Returns:
        True if the table was created, False if it existed.
    """
    client = _client(settings)
    try:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "request_id", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "request_id", "AttributeType": "S"}
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except client.exceptions.ResourceInUseException:
        return False
    client.get_waiter("table_exists").wait(TableName=table)
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
    )
    return True


class DynamoDBResultStore(ResultStore):
    """Results in a DynamoDB table; see the module documentation.

    Args:
        table: The table name.
        settings: Region, endpoint and credentials (the SQS endpoint setting
            also points DynamoDB calls at a local server).
        ttl_seconds: How long a record is kept. Defaults to 7 days.
    """

    def __init__(
        self, table: str, settings: Settings, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        super().__init__(ttl_seconds)
        self.table = table
        self._client = _client(settings)

    def _call(self, action: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, action)(TableName=self.table, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                return None
            message = f"DynamoDB {action} on {self.table} failed: {code}: {exc}"
            raise TransportError(message) from exc
        except BotoCoreError as exc:
            raise TransportError(
                f"DynamoDB {action} on {self.table} failed: {exc}"
            ) from exc

    def _item(self, row: _Row) -> dict[str, Any]:
        item: dict[str, Any] = {
            "request_id": {"S": row.request_id},
            "tenant_id": {"S": row.tenant_id},
            "status": {"S": row.status.value},
            "expires_at": {"N": repr(row.expires_at)},
            "ttl": {"N": str(int(row.expires_at + _TOMBSTONE_SECONDS))},
        }
        if row.body is not None:
            item["body"] = {"B": zlib.compress(row.body.encode("utf-8"))}
        return item

    def _insert_queued(self, row: _Row) -> None:
        self._call(
            "put_item",
            Item=self._item(row),
            ConditionExpression="attribute_not_exists(request_id)",
        )

    def _put_answer(self, row: _Row) -> bool:
        reply = self._call(
            "put_item",
            Item=self._item(row),
            ConditionExpression=(
                "attribute_not_exists(request_id) OR (tenant_id = :tenant AND "
                "(#s = :queued OR (#s = :failed AND :new = :completed)))"
            ),
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":tenant": {"S": row.tenant_id},
                ":queued": {"S": Status.QUEUED.value},
                ":failed": {"S": Status.FAILED.value},
                ":completed": {"S": Status.COMPLETED.value},
                ":new": {"S": row.status.value},
            },
        )
        return reply is not None

    def _load(self, request_id: str) -> _Row | None:
        reply = self._call(
            "get_item", Key={"request_id": {"S": request_id}}, ConsistentRead=True
        )
        item = (reply or {}).get("Item")
        if not item:
            return None
        body = item.get("body", {}).get("B")
        return _Row(
            request_id,
            item["tenant_id"]["S"],
            Status(item["status"]["S"]),
            zlib.decompress(body).decode("utf-8") if body is not None else None,
            float(item["expires_at"]["N"]),
        )

    def _statuses(self) -> list[tuple[Status, float]]:
        found: list[tuple[Status, float]] = []
        kwargs: dict[str, Any] = {
            "ProjectionExpression": "#s, expires_at",
            "ExpressionAttributeNames": {"#s": "status"},
        }
        while True:
            reply = self._call("scan", **kwargs)
            for item in reply.get("Items", []):
                status = Status(item["status"]["S"])
                found.append((status, float(item["expires_at"]["N"])))
            if "LastEvaluatedKey" not in reply:
                return found
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]

    def _expire(self, now: float) -> int:
        # DynamoDB's own TTL deletes items; reads already report expiry.
        del now
        return 0
