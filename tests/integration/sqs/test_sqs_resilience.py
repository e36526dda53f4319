"""The SQS channel when the server goes away, the queue vanishes or the driver is missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest
from tests.sqs_server import CREDENTIALS

from tidings.channels import sqs as sqs_package
from tidings.channels.sqs import SqsChannel
from tidings.exceptions import ChannelUnavailable, ConfigurationError, DriverMissing

from ._helpers import message, numbers, receive_all
from .conftest import OpenChannel, PrivateServer, environment, free_port

pytestmark = pytest.mark.sqs


async def test_connecting_to_a_server_that_is_not_there_raises_channel_unavailable() -> None:
    channel = SqsChannel("orders", endpoint_url=f"http://127.0.0.1:{free_port()}", **CREDENTIALS)
    started = time.monotonic()

    with pytest.raises(ChannelUnavailable, match="cannot be reached"):
        await channel.connect(environment())

    assert time.monotonic() - started < 20


async def test_a_queue_deleted_behind_the_channels_back_is_created_again(
    open_channel: OpenChannel, raw_client: Any
) -> None:
    channel = await open_channel()
    await raw_client.delete_queue(QueueUrl=channel._queue_url)

    await channel.send([message(1)])

    assert numbers(await receive_all(channel, 1)) == [1]


async def test_a_missing_queue_is_an_error_at_start_up_when_the_channel_may_not_create_it(
    open_channel: OpenChannel,
) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await open_channel(create_queue=False)


async def test_an_operation_during_a_short_outage_waits_for_the_server_and_succeeds(
    open_channel: OpenChannel, private_server: PrivateServer
) -> None:
    channel = await open_channel(endpoint_url=private_server.endpoint_url)
    await channel.send([message(1)])
    assert numbers(await receive_all(channel, 1)) == [1]

    private_server.stop()
    sending = asyncio.ensure_future(channel.send([message(2)]))
    await asyncio.sleep(1.5)
    assert not sending.done()
    private_server.start()  # a test server keeps nothing: the queue is created again

    await asyncio.wait_for(sending, timeout=10)
    assert numbers(await receive_all(channel, 1)) == [2]


async def test_an_operation_raises_channel_unavailable_once_the_reconnect_time_is_up(
    open_channel: OpenChannel, private_server: PrivateServer
) -> None:
    channel = await open_channel(endpoint_url=private_server.endpoint_url, reconnect_timeout=1.0)
    private_server.stop()
    started = time.monotonic()

    with pytest.raises(ChannelUnavailable, match="cannot be reached") as raised:
        while time.monotonic() - started < 10:
            await channel.receive(10, timeout=0.5)

    assert time.monotonic() - started < 10
    assert raised.value.channel == channel.name


def test_making_the_channel_without_its_driver_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in [m for m in sys.modules if m == "aiobotocore" or m.startswith("aiobotocore.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.delitem(sys.modules, "tidings.channels.sqs._driver", raising=False)
    monkeypatch.delattr(sqs_package, "_driver", raising=False)
    monkeypatch.setitem(sys.modules, "aiobotocore", None)

    with pytest.raises(DriverMissing, match=r"pip install 'tidings\[sqs\]'"):
        SqsChannel("orders")


def test_importing_the_channel_package_imports_no_driver() -> None:
    code = (
        "import sys, tidings, tidings.channels.sqs\n"
        "assert not {'aiobotocore', 'botocore'} & set(sys.modules), 'driver imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
