"""Two consumers: an echo, and one room every connection belongs to."""
import itertools
import json

from channels.generic.websocket import AsyncWebsocketConsumer

ROOM = "room1"
_guests = itertools.count(1)


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class RoomConsumer(AsyncWebsocketConsumer):
    """A text {"message": ...} or plain text goes to the whole group."""

    async def connect(self):
        self.nick = f"guest{next(_guests)}"
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.close(code=1003)
            return
        message = text_data
        try:
            parsed = json.loads(text_data)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            if not isinstance(parsed.get("message"), str):
                await self.close(code=1003)
                return
            message = parsed["message"]
        await self.channel_layer.group_send(ROOM, {
            "type": "room.message",
            "payload": {"message": message, "nick": self.nick, "room": ROOM},
        })

    async def room_message(self, event):
        await self.send(text_data=json.dumps({"payload": event["payload"]}))
