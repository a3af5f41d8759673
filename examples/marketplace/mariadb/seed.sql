insert ignore into specialist (id, name, online) values
    (1, 'Ada Lovelace', true),
    (2, 'Grace Hopper', true),
    (3, 'Alan Turing', false),
    (4, 'Edsger Dijkstra', true);

insert ignore into session (id, specialist_id, started_at, ended_at) values
    (1, 2, now(3) - interval 10 minute, null),
    (2, 4, now(3) - interval 2 hour, now(3) - interval 1 hour);
