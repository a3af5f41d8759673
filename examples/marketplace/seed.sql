insert into specialist (id, name, online) values
    (1, 'Ada Lovelace', true),
    (2, 'Grace Hopper', true),
    (3, 'Alan Turing', false),
    (4, 'Edsger Dijkstra', true)
on conflict (id) do nothing;

insert into session (id, specialist_id, started_at, ended_at) values
    (1, 2, now() - interval '10 minutes', null),
    (2, 4, now() - interval '2 hours', now() - interval '1 hour')
on conflict (id) do nothing;
