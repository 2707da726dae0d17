/*
 * Chat room events: what travels between workers (and hosts) and how each
 * member sees it.
 *
 * A room's event is published once, in a compact form that says what
 * happened (who said what, who joined), not how it looks; every receiving
 * worker renders it for its own members, once per form: a text line for
 * people at telnet, a JSON object for browsers and WebSocket programs.
 * Nothing here knows about sessions or sockets, so the unit tests and the
 * fuzzer drive it directly.
 */
#ifndef FORKD_CHAT_EVENT_H
#define FORKD_CHAT_EVENT_H

#include <stdbool.h>
#include <stddef.h>

enum chat_kind {
	CHAT_MESSAGE = 'M',	/* nick said text */
	CHAT_JOIN = 'J',	/* nick entered the room */
	CHAT_LEAVE = 'L',	/* nick left the room; text: why (may be empty) */
	CHAT_NICK = 'N',	/* nick is now known as text */
	CHAT_NOTICE = 'T'	/* text from the server to everyone in the room */
};

struct chat_event {
	enum chat_kind	 kind;
	const char	*nick;		/* NUL-terminated; "" for a notice */
	const char	*text;		/* text_len bytes, may hold anything */
	size_t		 text_len;
};

/* Bytes of an encoded event besides the nick and text. */
#define CHAT_EVENT_OVERHEAD	3

/* Encode into buf; returns the length, or 0 when cap is too small. */
size_t		 chat_event_encode(char *buf, size_t cap, const struct chat_event *);
/*
 * Decode what the channel layer delivered; the event points into buf.
 * Bytes that are not an encoded event (a line from a layer that speaks
 * text, such as "* other hosts are out of reach ...\r\n") are a notice of
 * that text, without its line end and the "* " of a notice line.
 */
void		 chat_event_decode(const char *buf, size_t len, struct chat_event *);

/*
 * Render for one form, with "\r\n" at the end; malloc'd, *len set; NULL
 * when out of memory.  room names the room the event happened in.
 *   text:  "[nick] text", "* nick joined room", "* nick left room",
 *          "* old is now known as new", "* text"
 *   json:  {"payload":{"message":..,"nick":..,"room":..}}
 *          {"event":"join","nick":..,"room":..}
 *          {"event":"leave","nick":..,"room":..}  (+ "reason" when given)
 *          {"event":"nick","from":..,"nick":..,"room":..}
 *          {"event":"notice","text":..,"room":..}
 */
char		*chat_event_text(const struct chat_event *, const char *room, size_t *len);
char		*chat_event_json(const struct chat_event *, const char *room, size_t *len);

/*
 * A request from a member that speaks JSON.
 *   CHAT_IN_LINE     not a JSON object with "message" or "command": the
 *                    request is the text itself (a command when it starts
 *                    with '/', else a message), as a plain client sends it
 *   CHAT_IN_MESSAGE  {"message": "..."}: *out is the message, never a command
 *   CHAT_IN_COMMAND  {"command": "nick", "arg": "alice"}: *out is "/nick alice"
 *   CHAT_IN_ERROR    a JSON object that asks for something malformed:
 *                    *out says what is wrong
 * *out is malloc'd and NUL-terminated (not for CHAT_IN_LINE); NULL when
 * out of memory.
 */
enum chat_input {
	CHAT_IN_LINE,
	CHAT_IN_MESSAGE,
	CHAT_IN_COMMAND,
	CHAT_IN_ERROR
};
enum chat_input	 chat_json_input(const char *req, size_t len, char **out, size_t *outlen);

/* Longest nick or room name. */
#define CHAT_NAME_MAX	32
/* A nick or room name: 1-CHAT_NAME_MAX letters, digits, '_', '-' or '.' */
bool		 chat_valid_name(const char *, size_t);

/*
 * Copy n bytes of src to dst (room for n bytes) with every byte that is
 * not part of a well-formed UTF-8 sequence replaced by '?', so any text can
 * go into JSON and WebSocket text messages.  Returns the length (== n).
 */
size_t		 chat_utf8_clean(char *dst, const char *src, size_t n);

#endif
