insert into category (id, name) values (1, 'Books'), (2, 'Games') on conflict (id) do nothing;
insert into product (id, category_id, name, price, stock) values
    (1, 1, 'Dune', 9.99, 3),
    (2, 1, 'Emma', 5.50, 0),
    (3, 2, 'Go', 30.00, 1)
on conflict (id) do nothing;
