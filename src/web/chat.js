/*
 * forkd chat page.  Talks to the chat service over a WebSocket on the
 * listener that served this page; the request path names the room.
 * Everything a member sends is shown as text (textContent), never as markup.
 */
'use strict';

(function () {
  var RETRY_MIN = 500, RETRY_MAX = 15000;
  /* bytes of one request; the server's max_line is 8192 by default, and a
   * longer message would end the connection (close code 1009) */
  var REQUEST_MAX = 8000;

  var logEl = document.getElementById('log');
  var membersEl = document.getElementById('members');
  var countEl = document.getElementById('count');
  var roomEl = document.getElementById('room');
  var nickEl = document.getElementById('nick');
  var statusEl = document.getElementById('status');
  var form = document.getElementById('form');
  var input = document.getElementById('input');
  var sendBtn = document.getElementById('send');

  var ws = null;
  var retry = RETRY_MIN;
  var connectedOnce = false;
  var stopped = false;
  var room = location.pathname.replace(/^\/+|\/+$/g, '');	/* '' = the default room */
  var nick = null;
  var wantNick = null;		/* the nick this page asked for, asked again after a reconnect */
  var members = new Set();
  var showWho = false;		/* the next /who answer was asked for by the user */

  function line(cls, who, text) {
    var atEnd = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
    var div = document.createElement('div');
    div.className = 'line ' + cls;
    if (who !== null) {
      var w = document.createElement('span');
      w.className = 'who';
      w.textContent = who;
      div.appendChild(w);
    }
    var t = document.createElement('span');
    t.className = 'text';
    t.textContent = text;
    div.appendChild(t);
    logEl.appendChild(div);
    if (atEnd)
      logEl.scrollTop = logEl.scrollHeight;
  }

  function status(text, cls) {
    statusEl.textContent = text;
    statusEl.className = 'status' + (cls ? ' ' + cls : '');
  }

  function online(yes) {
    input.disabled = !yes;
    sendBtn.disabled = !yes;
    if (yes)
      input.focus();
  }

  function showMembers() {
    var names = Array.from(members).sort();
    membersEl.replaceChildren();
    names.forEach(function (n) {
      var li = document.createElement('li');
      li.textContent = n;
      if (n === nick)
        li.className = 'me';
      membersEl.appendChild(li);
    });
    countEl.textContent = String(names.length);
  }

  function setNick(n) {
    nick = n;
    nickEl.textContent = n;
    showMembers();
  }

  function setRoom(r) {
    room = r || '';
    roomEl.textContent = r || '(none)';
    document.title = r ? r + ' \u2013 forkd chat' : 'forkd chat';
    /* a reload of the page comes back to the same room */
    if (r && location.pathname !== '/' + r + '/')
      history.replaceState(null, '', '/' + encodeURIComponent(r) + '/');
  }

  function send(obj) {
    var text = JSON.stringify(obj);
    if (new TextEncoder().encode(text).length > REQUEST_MAX) {
      line('err', null, 'too long to send (at most about ' + REQUEST_MAX + ' bytes)');
      return false;
    }
    if (ws && ws.readyState === WebSocket.OPEN)
      ws.send(text);
    return true;
  }

  function askWho(byUser) {
    showWho = byUser;
    send({ command: 'who' });
  }

  function handle(o) {
    if (o.payload) {
      var p = o.payload;
      line(p.nick === nick ? 'msg me' : 'msg', String(p.nick), String(p.message));
      return;
    }
    if (o.error !== undefined && o.event === undefined) {
      line('err', null, String(o.error));
      return;
    }
    switch (o.event) {
    case 'welcome':
      setNick(o.nick);
      setRoom(o.room);
      members = new Set();
      if (o.room)
        line('sys', null, 'you are ' + o.nick + ' in ' + o.room);
      else
        line('err', null, 'you are ' + o.nick + ', in no room: ' + o.error);
      if (o.room)
        askWho(false);
      if (wantNick && wantNick !== o.nick)
        send({ command: 'nick', arg: wantNick });
      else
        line('sys', null, 'type /help for the commands');
      break;
    case 'you':
      var moved = (o.room || '') !== room;
      setNick(o.nick);
      setRoom(o.room);
      line('sys', null, o.text);
      if (moved) {
        members = new Set();
        showMembers();
        if (o.room)
          askWho(false);
      } else {
        askWho(false);
      }
      break;
    case 'join':
      members.add(o.nick);
      showMembers();
      line('sys', null, o.nick + ' joined ' + o.room);
      break;
    case 'leave':
      members.delete(o.nick);
      showMembers();
      line('sys', null, o.nick + ' left ' + o.room + (o.reason ? ' (' + o.reason + ')' : ''));
      break;
    case 'nick':
      members.delete(o.from);
      members.add(o.nick);
      showMembers();
      line('sys', null, o.from + ' is now known as ' + o.nick);
      break;
    case 'who':
      if (o.room === room) {
        members = new Set(o.members);
        showMembers();
      }
      if (showWho)
        line('sys', null, 'in ' + o.room + ' (' + o.count + '): ' + o.members.join(', ') +
          (o.more ? ', ...' : ''));
      showWho = false;
      break;
    case 'rooms':
      line('sys', null, 'rooms (' + o.count + '): ' + o.rooms.map(function (r) {
        return r.room + ' (' + r.members + ')';
      }).join(', ') + (o.more ? ', ...' : ''));
      break;
    case 'help':
      line('sys', null, 'commands:');
      o.commands.forEach(function (c) {
        line('sys', null, '  ' + c.command + ' \u2013 ' + c.help);
      });
      break;
    case 'info':
    case 'notice':
      line('sys', null, String(o.text));
      break;
    default:
      line('sys', null, JSON.stringify(o));
    }
  }

  function connect() {
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
      (room ? '/' + encodeURIComponent(room) + '/' : '/');
    status(connectedOnce ? 'reconnecting\u2026' : 'connecting\u2026');
    ws = new WebSocket(url);
    ws.onopen = function () {
      retry = RETRY_MIN;
      status('connected', 'ok');
      online(true);
      if (connectedOnce)
        line('sys', null, 'reconnected');
      connectedOnce = true;
    };
    ws.onmessage = function (e) {
      var o;
      try {
        o = JSON.parse(e.data);
      } catch (err) {
        line('sys', null, String(e.data));
        return;
      }
      if (o !== null && typeof o === 'object')
        handle(o);
    };
    ws.onclose = function (e) {
      ws = null;
      online(false);
      if (stopped) {
        status('left', 'bad');
        line('sys', null, 'you left the chat; reload the page to come back');
        return;
      }
      /* back off, with jitter so that a restarted server is not hit by
       * every page at the same moment */
      var wait = Math.round(retry * (0.75 + Math.random() * 0.5));
      retry = Math.min(retry * 2, RETRY_MAX);
      var why = e.code ? ' (' + e.code + (e.reason ? ': ' + e.reason : '') + ')' : '';
      status('disconnected \u2013 retrying in ' + Math.ceil(wait / 1000) + ' s', 'bad');
      if (connectedOnce)
        line('err', null, 'connection lost' + why + '; reconnecting in ' +
          (wait / 1000).toFixed(1) + ' s');
      setTimeout(connect, wait);
    };
  }

  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var text = input.value;
    if (text.trim() === '' || !ws || ws.readyState !== WebSocket.OPEN)
      return;
    var m = /^\/(\S+)\s*(.*)$/.exec(text.trim());
    if (m) {
      var cmd = m[1].toLowerCase(), arg = m[2];
      if (cmd === 'nick' && arg)
        wantNick = arg;
      if (cmd === 'quit')
        stopped = true;
      if (cmd === 'who')
        showWho = true;
      if (!send(arg ? { command: cmd, arg: arg } : { command: cmd }))
        return;
    } else if (!send({ message: text })) {
      return;
    }
    input.value = '';
  });

  online(false);
  connect();
})();
