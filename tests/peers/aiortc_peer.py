#!/usr/bin/env python3
"""A plain MSC2354 client: aiortc for WebRTC, bare client-server API calls for Matrix.

Independent of d2dfs (no extensions, no E2EE): it is what interoperability is proven against.

    aiortc_peer.py --homeserver URL --user @u:hs --password PW --room !room:hs send FILE
    aiortc_peer.py --homeserver URL --user @u:hs --password PW --room !room:hs recv OUT

send: offers FILE, streams it whole on the data channel once a device answers, closes.
recv: answers the first live offer from another device, keeps every byte until the channel
closes, checks the offered size. Exit status 0 on success; the reason on stderr otherwise.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

# Loopback only: the tests must not send anything to this machine's other addresses.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

LIFETIME = 600_000
CHUNK = 16 * 1024


class Matrix:
    def __init__(self, homeserver, user, password):
        self.base = homeserver.rstrip("/")
        self.token = None
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        }
        login = self.request("POST", "/_matrix/client/v3/login", body)
        self.token = login["access_token"]
        self.user_id = login["user_id"]
        self.since = None

    def request(self, method, path, body=None, query=None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read())

    def send(self, room, event_type, content):
        txn = uuid.uuid4().hex
        path = "/_matrix/client/v3/rooms/%s/send/%s/%s" % (
            urllib.parse.quote(room), event_type, txn)
        return self.request("PUT", path, content)

    def sync(self, room, timeout_ms):
        """The timeline events of `room` since the last call."""
        query = {"timeout": str(timeout_ms),
                 "filter": json.dumps({"room": {"timeline": {"limit": 100}}})}
        if self.since:
            query["since"] = self.since
        response = self.request("GET", "/_matrix/client/v3/sync", query=query)
        self.since = response["next_batch"]
        joined = response.get("rooms", {}).get("join", {})
        return joined.get(room, {}).get("timeline", {}).get("events", [])


def log(*args):
    print("aiortc_peer:", *args, file=sys.stderr, flush=True)


async def add_candidates(pc, content):
    for c in content.get("candidates", []):
        text = c.get("candidate", "")
        if not text:
            continue
        candidate = candidate_from_sdp(text.split(":", 1)[1])
        candidate.sdpMid = c.get("sdpMid")
        candidate.sdpMLineIndex = c.get("sdpMLineIndex")
        await pc.addIceCandidate(candidate)


async def sync_events(matrix, room):
    return await asyncio.to_thread(matrix.sync, room, 1000)


async def send_file(matrix, room, path, deadline):
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("d2dfs")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await pc.setLocalDescription(await pc.createOffer())  # gathers: candidates in the SDP
    transfer_id = uuid.uuid4().hex
    size = os.path.getsize(path)
    await asyncio.to_thread(matrix.send, room, "m.d2dfile.invite", {
        "transfer_id": transfer_id,
        "lifetime": LIFETIME,
        "filename": os.path.basename(path),
        "info": {"mimetype": "application/octet-stream", "size": size},
        "offer": {"sdp": pc.localDescription.sdp, "type": "offer"},
        "version": 0,
    })
    log("offered", transfer_id, size, "bytes")
    answered = False
    while not opened.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError("no connection before the deadline")
        for event in await sync_events(matrix, room):
            content = event.get("content", {})
            if content.get("transfer_id") != transfer_id or event["sender"] == matrix.user_id:
                continue
            if event["type"] == "m.d2dfile.answer" and not answered:
                answered = True
                answer = content["answer"]
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            elif event["type"] == "m.d2dfile.candidates" and answered:
                await add_candidates(pc, content)
            elif event["type"] == "m.d2dfile.cancel":
                raise RuntimeError("the receiver cancelled")
        if answered:
            try:
                await asyncio.wait_for(opened.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            while channel.bufferedAmount > 1 << 20:
                await asyncio.sleep(0.005)
            channel.send(block)
    while channel.bufferedAmount > 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # let SCTP deliver what left the buffer
    channel.close()
    await asyncio.sleep(0.5)
    await pc.close()
    log("sent", size, "bytes")


async def receive_file(matrix, room, out, deadline):
    offer = None
    while offer is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no offer before the deadline")
        for event in await sync_events(matrix, room):
            content = event.get("content", {})
            if event.get("type") != "m.d2dfile.invite" or event["sender"] == matrix.user_id:
                continue
            if content.get("version") != 0:
                continue
            age = event.get("unsigned", {}).get("age", 0)
            if age < content.get("lifetime", 0):
                offer = content
    transfer_id = offer["transfer_id"]
    size = offer["info"]["size"]
    log("accepting", transfer_id, size, "bytes")
    pc = RTCPeerConnection()
    done = asyncio.Event()
    received = 0
    sink = open(out, "wb")

    @pc.on("datachannel")
    def on_datachannel(channel):
        @channel.on("message")
        def on_message(message):
            nonlocal received
            data = message.encode() if isinstance(message, str) else message
            sink.write(data)
            received += len(data)

        @channel.on("close")
        def on_close():
            done.set()

    await pc.setRemoteDescription(RTCSessionDescription(offer["offer"]["sdp"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await asyncio.to_thread(matrix.send, room, "m.d2dfile.answer", {
        "transfer_id": transfer_id,
        "lifetime": LIFETIME,
        "answer": {"sdp": pc.localDescription.sdp, "type": "answer"},
        "version": 0,
    })
    while not done.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError("transfer not complete before the deadline (%d of %d bytes)"
                               % (received, size))
        for event in await sync_events(matrix, room):
            content = event.get("content", {})
            if content.get("transfer_id") != transfer_id or event["sender"] == matrix.user_id:
                continue
            if event["type"] == "m.d2dfile.candidates":
                await add_candidates(pc, content)
            elif event["type"] == "m.d2dfile.cancel":
                raise RuntimeError("the sender cancelled")
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    sink.close()
    await pc.close()
    if received != size:
        raise RuntimeError("received %d of %d bytes" % (received, size))
    log("received", received, "bytes")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("mode", choices=["send", "recv"])
    parser.add_argument("path")
    args = parser.parse_args()
    matrix = Matrix(args.homeserver, args.user, args.password)
    matrix.sync(args.room, 0)  # start from now: earlier events are history
    deadline = time.monotonic() + args.timeout
    try:
        if args.mode == "send":
            asyncio.run(send_file(matrix, args.room, args.path, deadline))
        else:
            matrix.since = None  # an offer made before we started counts if still live
            asyncio.run(receive_file(matrix, args.room, args.path, deadline))
    except Exception as error:  # one line for the test's failure message
        log("failed:", repr(error))
        sys.exit(1)


if __name__ == "__main__":
    main()
